"""Stand-in for `simpletuner.helpers.models.registry.ModelRegistry`."""


class ModelRegistry:
    @classmethod
    def model_families(cls):
        from .flux.model import Flux

        return {"flux": Flux}
