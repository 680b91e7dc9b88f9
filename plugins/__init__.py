"""Built-in channel plugins, registered through the `gateway` entry-point group."""
