"""Scenes as the model sees them: cut into patches (:mod:`~bayesfluo.scene.grid`), simulated
with the fine-grid physics (:mod:`~bayesfluo.scene.simulate`) and drawn from the model's
prior predictive (:mod:`~bayesfluo.scene.prior`)."""
