"""Model criticism: PSIS k-hat and importance diagnostics, ArviZ export and
plots."""
