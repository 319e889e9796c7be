module fixture/primitives

go 1.21
