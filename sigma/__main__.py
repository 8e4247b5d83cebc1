import sys

try:
    from sigma.cli import main
except KeyboardInterrupt:   # a Ctrl-C while the CLI's few modules import: what main() says for one in a command
    print("sigma: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
