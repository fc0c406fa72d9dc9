"""``python -m onerec`` runs the ``onerec`` command (e.g. under ``torchrun -m onerec``)."""

from onerec.cli import main

if __name__ == "__main__":
    main()
