"""Tools of the project's own development: what the tests need installed, the clean room."""
