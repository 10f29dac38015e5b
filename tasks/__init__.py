"""Lightning modules and data modules, one task family per folder (classification, qa, seq2seq, sft)."""

from tasks import resolvers  # noqa: F401,E402  (registers the config's resolvers before any config is read)
