"""``python -m invfp``: the command line."""

from invfp.cli import main

if __name__ == "__main__":
    main()
