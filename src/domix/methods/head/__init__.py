"""Only the classification head trains: what a task gets from the frozen base's features alone."""
