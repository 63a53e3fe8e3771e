//! NBD server (see the module files).
