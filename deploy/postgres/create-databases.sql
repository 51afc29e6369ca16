-- One database per service: no service can read another's tables.
CREATE DATABASE push;
CREATE DATABASE enrollment;
CREATE DATABASE vpp;
CREATE DATABASE roster;
CREATE DATABASE directory;
