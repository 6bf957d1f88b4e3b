"""One valid CrossModelTransfer entry (shared by the schema tests and the site-file tests)."""

GOOD = {
    "probeId": "deception-llama-3-8b-l16",
    "sourceModel": "meta-llama/Meta-Llama-3-8B",
    "targetModel": "mistralai/Mistral-7B-v0.1",
    "pearson_ce": 0.61,
    "transfer_auroc": 0.83,
    "notes": "rho_CE 0.61 [0.52, 0.69]",
}
