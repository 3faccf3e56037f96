"""`python -m omnisift_edge.cli`: the omnisift-edge command line."""

from omnisift_edge.cli import main

main(prog_name="omnisift-edge")
