"""``python -m papycluster``: the ``papycluster`` command, for where its script is not on
PATH (Windows, a venv whose Scripts or bin directory is not on PATH)."""

from papycluster.cli import main

if __name__ == "__main__":
    main()
