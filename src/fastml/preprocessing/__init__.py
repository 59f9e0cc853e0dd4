"""scikit-learn compatible preprocessing transformers on fastml's kernels.

The estimator plumbing (``get_params``, ``clone``, ``set_output``, feature
names, parameter validation) is scikit-learn's own; fastml supplies the
numeric work through the current backend's preprocessing ops
(``column_stats``, ``column_minmax``, ``column_quantiles``, ``standardize``, ``unstandardize``,
``normalize_rows``, ``polynomial_features``, ``unique_counts``, ``encode_values``,
``fill_missing``, ``one_hot``). Importing this module imports scikit-learn;
``import fastml`` alone does not.
"""
from ._encoders import OneHotEncoder, OrdinalEncoder
from ._impute import SimpleImputer
from ._label import LabelEncoder
from ._polynomial import PolynomialFeatures
from ._scalers import MaxAbsScaler, MinMaxScaler, Normalizer, RobustScaler, StandardScaler

__all__ = ["LabelEncoder", "MaxAbsScaler", "MinMaxScaler", "Normalizer", "OneHotEncoder",
           "OrdinalEncoder", "PolynomialFeatures", "RobustScaler", "SimpleImputer", "StandardScaler"]
