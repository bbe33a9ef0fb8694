"""Provider adapters: one per channel, each turning every response, error and network failure
into exactly one ``SendOutcome``. ``registry.build_adapters`` wires them up."""
