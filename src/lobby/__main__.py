"""`python -m lobby` runs lobbyd."""

from lobby.lobbyd import main

main()
