"""Reading a result: breakdowns and the HTML report."""
