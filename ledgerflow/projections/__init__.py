"""Read models folded from the log. Not built yet: the CLI and notebooks fold streams directly."""

__all__: list[str] = []
