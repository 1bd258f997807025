"""`python -m glass_ad.cli …`."""

from glass_ad.cli import main

main()
