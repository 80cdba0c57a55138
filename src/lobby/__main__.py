"""`python -m lobby` runs lobbyd."""

from lobby.daemon import main

main()
