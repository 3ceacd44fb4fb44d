"""Example rule DAGs (retail Ask, bank Engineer) and the code that builds their demo sources."""
