module fixture/parkedstacks

go 1.21
