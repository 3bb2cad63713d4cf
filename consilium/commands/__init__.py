"""The `consilium` subcommands, one module each (`serve`, `token`, `audit`, `keys`, `revoke`,
`policy`, `watermark`, `recordings`, `retention`, `bot`): each has `add_parser(subparsers)`, which
adds its parser and sets its handler, and the handlers at module level. `consilium.cli` builds
the command line from them and dispatches."""
