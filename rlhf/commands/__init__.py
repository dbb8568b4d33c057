"""One module per `rlhf` subcommand: HELP, add_arguments(parser), run(args) -> int."""
