//! Integration tests of the sandbox payer, as one test binary (see `it/`).

mod it;
