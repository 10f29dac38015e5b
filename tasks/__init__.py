"""Lightning modules and data modules, one family per folder (classification, later QA and seq2seq)."""

from tasks import resolvers  # noqa: F401,E402  (registers the config's resolvers before any config is read)
