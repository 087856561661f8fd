mod admin;
mod api;
mod binary;
mod browser;
mod common;
mod hazards;
mod portal;
mod v3;
