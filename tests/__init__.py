import pytest

# Helpers' asserts report like a test's own (pytest rewrites only test modules and conftest).
pytest.register_assert_rewrite("tests._helpers")
