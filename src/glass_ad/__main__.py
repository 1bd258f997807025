"""`python -m glass_ad …` runs the `glass` command (and `torchrun -m glass_ad train …` trains data-parallel)."""

from glass_ad.cli import main

if __name__ == "__main__":
    main()
