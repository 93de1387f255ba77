"""`python -m lit_swift` is the `lit-swift` command."""

from lit_swift.preflight import main  # config/data checks, then lit_swift.cli.main

if __name__ == "__main__":
    main()
