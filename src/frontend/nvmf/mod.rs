//! NVMe over Fabrics, TCP transport (see the module files).
