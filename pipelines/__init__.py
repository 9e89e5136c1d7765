"""Assembly of the qdedup Beam pipeline, its options and its command line."""
