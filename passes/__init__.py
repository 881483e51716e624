"""EdgeBERT passes over Relax and TIR, one module per pass, each named `edgebert.<Name>`."""
