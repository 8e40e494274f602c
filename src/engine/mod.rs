//! Training machinery: optimizers ([`optim`]).

pub mod optim;
