"""Lightning modules and data modules, one family per folder (classification, later QA and seq2seq)."""
