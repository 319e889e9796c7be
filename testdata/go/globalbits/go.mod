module fixture/globalbits

go 1.21
