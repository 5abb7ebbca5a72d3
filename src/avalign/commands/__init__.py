"""One module per `avalign <command>`; each exposes `main(argv: list[str]) -> int`."""
