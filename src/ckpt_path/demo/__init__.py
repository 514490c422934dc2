"""A small real model whose code changed over several versions, for the demo and tests."""
