"""`python -m flanpipe`: the same CLI as the `flanpipe` command."""

from flanpipe.cli import run

if __name__ == "__main__":
    run()
