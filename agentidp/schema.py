"""drf-spectacular hooks."""


def strip_optional_trailing_slash(endpoints, **kwargs):
    """Document each route by its canonical path: the routes accept an optional trailing slash."""
    return [(path.rstrip("/") or "/", regex, method, callback) for path, regex, method, callback in endpoints]
