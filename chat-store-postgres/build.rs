//! `sqlx::migrate!` embeds the migrations at build time; without this, a
//! new migration file would not rebuild the crate (stable Rust cannot
//! track directories from a macro).

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
