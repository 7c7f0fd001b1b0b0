"""Physical constants (SI unless the name says otherwise)."""

BOLTZMANN = 1.380649e-23  # J K-1
SPEED_OF_LIGHT = 2.99792458e8  # m s-1
AMU = 1.66053906660e-27  # kg
C2 = 1.4387769  # second radiation constant hc/k, cm K
T_REF_HITRAN = 296.0  # HITRAN reference temperature, K
P_REF_HPA = 1013.25  # HITRAN reference pressure (1 atm), hPa
GRAVITY = 9.80665  # standard gravity, m s-2
MEAN_AIR_MASS_AMU = 28.9644  # dry air, US 1976
O2_VMR = 0.209476  # O2 volume mixing ratio of dry air, US 1976
O2_MASS_AMU = 31.9988
