//! precert's integration tests: one binary, one module per concern.
//! They run the real `precert` binary and a real SQLite ledger in a
//! temporary project made from the shipped sample configuration.

mod it;
