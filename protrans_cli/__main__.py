"""`python -m protrans_cli ...` (and `torchrun -m protrans_cli train ...`)."""

from protrans_cli._entry import main

if __name__ == "__main__":
    main()
