//! Generates a throwaway cluster CA and one certificate per node, for trying mutual TLS and for
//! the tests. Not for production keys: use your PKI there, with the same two DNS names per node
//! certificate (the node's name and `cluster.ractor-cache-sync`).
//!
//! ```text
//! cargo run --example gen_certs -- OUT_DIR NODE_NAME...
//! ```
//!
//! Writes `OUT_DIR/ca.pem`, and `OUT_DIR/NAME.pem` + `OUT_DIR/NAME.key` per node. With
//! `--ca-name NAME` the CA gets another name (a second, unrelated CA for tests).

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let ca_name = match args.iter().position(|a| a == "--ca-name") {
        Some(at) => {
            args.remove(at);
            args.remove(at)
        }
        None => "ractor_cache_sync test CA".to_owned(),
    };
    let (out, names) = args
        .split_first()
        .ok_or("usage: gen_certs OUT_DIR NODE_NAME...")?;
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out)?;

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    std::fs::write(out.join("ca.pem"), ca_cert.pem())?;
    let issuer = Issuer::new(ca_params, ca_key);

    for name in names {
        let dns = vec![
            name.clone(),
            ractor_cache_sync::node::TLS_CLUSTER_NAME.to_owned(),
        ];
        let mut params = CertificateParams::new(dns)?;
        params
            .distinguished_name
            .push(DnType::CommonName, name.clone());
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        std::fs::write(out.join(format!("{name}.pem")), cert.pem())?;
        std::fs::write(out.join(format!("{name}.key")), key.serialize_pem())?;
    }
    println!("wrote {} into {}", names.len() + 1, out.display());
    Ok(())
}
