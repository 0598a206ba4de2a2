//! Sim → bridge → broker throughput, against a raw publisher with the same confirm window.
