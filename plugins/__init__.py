"""gradscope's built-in plugins, one module per concern, loaded through entry points."""
