"""Data: options of data sets, reading structures and labels, splits and graphs."""
