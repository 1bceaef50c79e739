"""SAE architectures beside the paper's ReLU SAE and TopK (`e2e.sae`): BatchTopK and Matryoshka
(`batchtopk`), JumpReLU (`jumprelu`), the AuxK loss of the TopK family (`auxk`); their config
section (`config`) and the one place that builds an SAE from it (`build`)."""
