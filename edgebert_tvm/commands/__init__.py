"""One module per `edgebert-tvmc` command, each with `execute(args)`.

`cli.py` parses the command line and imports only the module of the command it runs: `run` (and
`eval` of an artifact) needs TVM's runtime alone, while compiling, tuning, training and packing
import PyTorch's model code, transformers and Relax, which would add seconds to every `run`.
"""
