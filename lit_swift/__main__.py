"""`python -m lit_swift` is the `lit-swift` command."""

from lit_swift.cli import main

if __name__ == "__main__":
    main()
